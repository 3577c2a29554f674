"""pytest set-up for the whole repository (unit tests in tests/, notebooks in book/)."""

import os

# Quick mode (small data, one short epoch, CPU-sized) for every notebook nbval runs. Set here,
# before nbval starts any kernel, so that the kernels inherit it.
os.environ.setdefault("COURSE_QUICK", "1")
# Like `python -m helpers.notebooks execute`, so that nbval sees what produced the stored outputs.
os.environ.setdefault("COURSE_EXECUTING", "1")
