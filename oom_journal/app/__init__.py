"""The application: the command (cli.py, test_sinks.py), the configuration (config.py), the
daemon's loop and lifecycle (daemon.py), and what it tells systemd (notify.py) and its log (log.py)."""
