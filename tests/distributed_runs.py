"""Several training configs in one torchrun launch, one after another: the processes start and
import once (seconds each) instead of once a config. Used by test_distributed.py.

  python -m torch.distributed.run --standalone --nproc-per-node N tests/distributed_runs.py A.yaml B.yaml ...

The runs share one process group, made before the first and left after the last: `train` leaves
the group when its run is done, and a second `init_process_group` in the same processes under
torchrun hangs (one rank waits in it while the other has passed it), so here leaving a run is a
barrier. Before each run rank 0 writes `== run A.yaml` to stderr, so the output splits by run.
"""

import sys

from tunesmith.config import load_config
from tunesmith.engine import distributed
from tunesmith.run import train

leave = distributed.stop
distributed.stop = distributed.barrier
ranks = distributed.start()
for path in sys.argv[1:]:
    if ranks.main:
        print(f"== run {path}", file=sys.stderr, flush=True)
    train(load_config(path), quiet=True)
leave()
