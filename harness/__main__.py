"""`python -m harness`: see harness.app (kept out of __main__ so launchers can pickle the task)."""

import sys

from harness.usage import answer_help

if __name__ == "__main__":
    answer_help(sys.argv[1:])  # before the app's imports: help answers in a second

from harness.app import main  # noqa: E402

if __name__ == "__main__":
    main()
