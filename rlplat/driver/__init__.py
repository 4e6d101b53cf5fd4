"""The driver: the only place that sees every role.

    loop.py         train(cfg): the training loop a newcomer reads first
    workers.py      THE Ray boundary: start-up, placement, every remote call (each with a deadline)
    experience.py   rollout modes behind one interface, rewards, batches, rollout metrics (no Ray)
    evaluation.py   greedy evaluation during training and `rlplat eval`
    run_state.py    checks before anything starts, checkpoints, resume, the run's files
"""
