"""A lease holder in a process of its own whose clock is set wrong: the lease tests' "other host".

``python tests/lease_holder.py URL KEY SKEW_S HEARTBEAT_S`` takes the lease with ``time.time``
running ``SKEW_S`` off, prints ``held FENCE``, and then obeys stdin, one word a line:
``stall`` stops its heartbeat (the process stays alive, as a hung driver would) and prints
``stalled``; end of input releases the lease and exits.
"""

from __future__ import annotations

import sys
import time


def main(url: str, key: str, skew: float, heartbeat: float) -> None:
    real = time.time
    time.time = lambda: real() + skew  # this whole process lives on the wrong clock

    import sqlalchemy as sa

    from search import lease

    lease.HEARTBEAT_S = heartbeat
    engine = sa.create_engine(url)
    held = lease.Lease(engine, key, "skewed holder")
    held.acquire()
    print(f"held {held.fence}", flush=True)
    for line in sys.stdin:
        if line.strip() == "stall":
            held._stop.set()  # the heartbeat thread ends between two beats, not inside one
            held._thread.join()
            print("stalled", flush=True)
    held.release()
    engine.dispose()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
