#!/kaniko/.emulator/busybox sh
# Stand-in for /kaniko/executor inside the runner-driver emulated cluster.
# It checks flags, credentials and TLS trust the way kaniko would, then stops:
# it never builds an image (it pushes a tiny stand-in to registries on 127.0.0.1).
# The real executor is a static Go binary.
. /kaniko/.emulator/launch.env
unset PYTHONPATH PYTHONSTARTUP
PYTHONHOME="$EMU_PYHOME" exec "$EMU_LOADER" --library-path "$EMU_LIBPATH" "$EMU_PYTHON" -s -S -B /kaniko/.emulator/executor.py "$@"
