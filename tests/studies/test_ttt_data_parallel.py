"""Think-to-Talk decoding split over 4 fake devices gives the single-device result."""

import json
import os
import subprocess
import sys
from pathlib import Path


def test_data_parallel_decoding_matches_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    worker = Path(__file__).with_name("_ttt_data_parallel_worker.py")
    proc = subprocess.run([sys.executable, str(worker)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["devices"] == 4 and r["data_axis"] == 4
    assert r["texts_equal"] and r["lengths_equal"]
    assert r["max_state_diff"] < 1e-4
