"""runner-driver: a GitLab Runner custom executor driver for unprivileged kaniko pods."""

__version__ = "0.1.0"
