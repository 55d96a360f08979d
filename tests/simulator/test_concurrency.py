"""Many clients at once: every item of every batch is applied exactly once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tests.simulator.conftest import VERSION, Client, contact_2026, wait_until

THREADS = 8
BATCHES_PER_THREAD = 5
ITEMS_PER_BATCH = 20


def test_parallel_batches_all_apply(sim):
    sim.configure(requests_per_minute=10_000)

    def worker(thread: int) -> None:
        client = Client(
            sim.base_url + "/api", {"Authorization": "Omnisend-API-Key test-key", "Omnisend-Version": VERSION}
        )
        for b in range(BATCHES_PER_THREAD):
            items = [contact_2026(f"t{thread}-b{b}-{i}@example.com") for i in range(ITEMS_PER_BATCH)]
            assert client.batch(items).status_code == 201

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(worker, range(THREADS)))

    expected_batches = THREADS * BATCHES_PER_THREAD
    wait_until(lambda: sim.stats()["batches_by_status"]["finished"] == expected_batches, "all batches finished")
    assert sim.stats()["contacts_total"] == expected_batches * ITEMS_PER_BATCH
