"""Think-to-Talk decoding split over 4 fake devices gives the single-device result."""

from pathlib import Path


def test_data_parallel_decoding_matches_one_device(fake_devices):
    r = fake_devices(Path(__file__).with_name("_data_parallel_worker.py"), 4)
    assert r["devices"] == 4 and r["data_axis"] == 4
    assert r["texts_equal"] and r["lengths_equal"]
    assert r["max_state_diff"] < 1e-4
