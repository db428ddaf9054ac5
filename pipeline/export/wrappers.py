"""Thin torch wrappers that give each task one clean, tensor-only forward signature."""

from __future__ import annotations

import torch


class CausalLMLogits(torch.nn.Module):
    """input_ids -> logits, without a KV cache (static-shape decode is the compiler's job)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits for every position of `input_ids`."""
        return self.model(input_ids=input_ids, use_cache=False).logits


class SentenceEmbedding(torch.nn.Module):
    """Token encoder + masked mean pooling + L2 normalisation (sentence-transformers)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """One unit-length sentence embedding per row, mean-pooled over the unmasked tokens."""
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)


class HiddenStates(torch.nn.Module):
    """Any encoder: input_ids, attention_mask -> last_hidden_state."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The encoder's last hidden state for every token."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
