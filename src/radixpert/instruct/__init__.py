"""Instruction sets: Study records -> conversations (LLaVA/ShareGPT layout), one task each.

Each task object both builds training conversations and grades a model's answer, so the
data a model learns from and the way it is scored cannot drift apart.
"""
