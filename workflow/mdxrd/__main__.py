import sys

from mdxrd.cli import main

sys.exit(main())
