"""Reliability and security checks of the streaming worker, on the real broker and the real Triton.

- `reliability.faults`: fault scenarios (kill -9 of workers, of Triton, of the broker; a consumer
  group losing a member; a broker that is not there yet) with loss / duplicate accounting;
- `reliability.hostile`: a deterministic hostile-input corpus (hypothesis strategies + hand-made
  cases) and the scenario that pushes it through a running worker;
- `python -m reliability [--quick]`: runs them and writes `reports/reliability.{md,json}`.
"""
