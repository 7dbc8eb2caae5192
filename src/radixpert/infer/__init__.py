"""Running trained models: batch generation (chat, grounding and attention maps to come)."""
