"""End-to-end testbed: Ubuntu 24.04 hosts in systemd-nspawn with fake GPUs and fake vendor repositories."""
