# Sourced by scripts/demo.sh and scripts/test.sh: less TensorFlow
# start-up noise, unless the caller asked for it (Keras imports TensorFlow,
# when installed, on every backend).
#
# TF_CPP_MIN_LOG_LEVEL=2 silences TensorFlow's C++ info and warnings, but
# TensorFlow 2.21 prints its oneDNN notice (two lines, once per process)
# before that level applies, and on the TensorFlow backend the study's
# workers warn about tf.function retracing as each predicts with its n-th
# new model (expected: every run builds its own model). `quietly CMD`
# drops exactly those lines from CMD's stderr; everything else passes
# through, and the exit status is CMD's.
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
_tf_noise='^WARNING: All log messages before absl::InitializeLog\(\) is called'
_tf_noise+='|^I[0-9]{4} [0-9:.]+ +[0-9]+ port\.cc:[0-9]+\] oneDNN custom operations'
_tf_noise+='|^WARNING:tensorflow:.* triggered tf\.function retracing'
drop_noise() { grep --line-buffered -v -E "$_tf_noise" || [[ $? == 1 ]]; }
quietly() { { "$@" 2>&1 1>&3 3>&- | drop_noise >&2 3>&-; } 3>&1; }
