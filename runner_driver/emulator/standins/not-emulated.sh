#!/kaniko/.emulator/busybox sh
echo "@NAME@: stand-in in the runner-driver emulated cluster; this tool is not emulated" >&2
exit 1
