"""Learners: the policy (and critic) model, optimizer and losses. No Ray here."""
