"""The quickstart's date task, for the distillation example."""

import sys
from pathlib import Path

from tunesmith.tasks.dates import write_splits

out = Path(sys.argv[1] if len(sys.argv) > 1 else "work/data")
write_splits(out)
print(f"data in {out}")
