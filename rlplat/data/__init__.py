"""Experience storage between rollout (producers) and the learner (consumer).

`staleness.py` holds the pure policy-version rules (no Ray, no TransferQueue), which both the store and the
async `producer.py` ask; `store.py` holds `ExperienceStore`, the bounded, staleness-aware group store built on
TransferQueue, with its row codec (`codec.py`, derived from `Sample`'s fields) and the TransferQueue actors
(`transferqueue.py`, the only place they are started). Import the store from `rlplat.data.store` so that importing
the pure rules never pulls in TransferQueue or Ray.
"""
