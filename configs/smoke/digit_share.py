"""A reward with signal for an untrained model, used by the smoke spec (and an example of a user reward).

A random tiny model almost never reverses digits, so the demo's reward is 0 for every sample and GRPO has no
gradient. The share of digit characters in a response varies between a random model's samples.
"""


def digit_share(batch):
    return [sum(c.isdigit() for c in text) / max(1, len(text)) for text in batch.response_texts]
