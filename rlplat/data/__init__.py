"""Experience storage between rollout (producers) and the learner (consumer).

`staleness.py` holds the pure policy-version rules (no Ray, no TransferQueue); `store.py` holds
`ExperienceStore`, the bounded, staleness-aware group store built on TransferQueue. Import the store from
`rlplat.data.store` so that importing the pure rules never pulls in TransferQueue or Ray.
"""
