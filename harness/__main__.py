"""`python -m harness`: see harness.app (kept out of __main__ so launchers can pickle the task)."""

from harness.app import main

if __name__ == "__main__":
    main()
