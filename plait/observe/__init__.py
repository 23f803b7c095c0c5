"""What a run is doing, measured while it runs: throughput and MFU over each log interval,
memory, a start-up banner, profiler traces, CUDA memory snapshots and straggler reports.

The trainer makes one :class:`plait.observe.observer.Observer` and calls it around each step;
every figure it adds lands in the step's record, so metrics.jsonl, TensorBoard and wandb get
the same names."""
