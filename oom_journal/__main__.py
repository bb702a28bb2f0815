import sys

from oom_journal.app.cli import main

sys.exit(main())
