import os

# TensorFlow's C++ start-up chatter (oneDNN, CPU features) would precede our one-line errors on stderr;
# must be set before TensorFlow is imported. Users can still raise it by setting the variable themselves.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from mildnet.cli import main  # noqa: E402

raise SystemExit(main())
