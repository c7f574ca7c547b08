"""Tables and figures from stored results, as a job entrypoint (the same as ``raysvc report``).

    ray job submit --working-dir . -- python -m jobs.report s3://raysvc/demo --out reports/demo
"""

import sys

from analysis.report import main

if __name__ == "__main__":
    sys.exit(main())
