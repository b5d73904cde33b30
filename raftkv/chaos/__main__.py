"""`python -m raftkv.chaos ...` is `raftkv chaos ...`."""

from raftkv.chaos.cli_command import chaos

if __name__ == "__main__":
    chaos(prog_name="raftkv chaos")
