"""The DREG study harness: data sets, regimes and models; the runner,
its results store, the statistics and the report (`keras-dreg study`).
"""

from keras_dreg.study.config import RunConfig
from keras_dreg.study.config import StudyConfig
from keras_dreg.study.config import load_config
from keras_dreg.study.config import preset
from keras_dreg.study.datasets import OFFLINE_DATASETS
from keras_dreg.study.datasets import ONLINE_DATASETS
from keras_dreg.study.datasets import REAL_DATASETS
from keras_dreg.study.datasets import Dataset
from keras_dreg.study.datasets import available_datasets
from keras_dreg.study.datasets import load_dataset
from keras_dreg.study.datasets import register_dataset
from keras_dreg.study.executors import LocalExecutor
from keras_dreg.study.executors import RayExecutor
from keras_dreg.study.models import ACTIVATIONS
from keras_dreg.study.models import DEFAULT_MODEL
from keras_dreg.study.models import available_models
from keras_dreg.study.models import build_model
from keras_dreg.study.models import register_model
from keras_dreg.study.regimes import REGIMES
from keras_dreg.study.regimes import TRAIN_FRACTIONS
from keras_dreg.study.regimes import corrupt_test_inputs
from keras_dreg.study.regimes import make_messy
from keras_dreg.study.regimes import subsample
from keras_dreg.study.report import assess_findings
from keras_dreg.study.report import write_report
from keras_dreg.study.runner import run_study
from keras_dreg.study.runner import train_run
from keras_dreg.study.settings import SETTINGS
from keras_dreg.study.settings import register_regularizer
from keras_dreg.study.store import ResultStore
from keras_dreg.study.store import RunResult

__all__ = [
    "ACTIVATIONS",
    "DEFAULT_MODEL",
    "OFFLINE_DATASETS",
    "ONLINE_DATASETS",
    "REAL_DATASETS",
    "REGIMES",
    "SETTINGS",
    "TRAIN_FRACTIONS",
    "Dataset",
    "available_datasets",
    "available_models",
    "build_model",
    "corrupt_test_inputs",
    "load_dataset",
    "make_messy",
    "register_dataset",
    "register_model",
    "register_regularizer",
    "subsample",
    "LocalExecutor",
    "RayExecutor",
    "ResultStore",
    "RunConfig",
    "RunResult",
    "StudyConfig",
    "assess_findings",
    "load_config",
    "preset",
    "run_study",
    "train_run",
    "write_report",
]
