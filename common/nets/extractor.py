"""Reading a named layer of a model: the :class:`Extractor`.

Named layers (:attr:`ldpo.common.nets.archs.Arch.layers`) are read with a forward hook on the
module that produces them; the hook stops the forward pass there, so later layers cost
nothing. timm models are read through ``forward_features``/``forward_head``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .archs import arch_record, check_layer
from ..errors import InputError
from .heads import Captured, num_outputs

#: checkpoint targets whose outputs are independent sigmoids, not one softmax
SIGMOID_TARGETS = ("multi", "words")


# -- reading a layer ------------------------------------------------------------------
def pooled_stage(output: torch.Tensor) -> torch.Tensor:
    """One stage of ``multiscale``: the map's global average (``[N,C,H,W]`` or tokens ``[N,T,C]``), L2-normalized."""
    pooled = output.float().mean(dim=(2, 3)) if output.ndim == 4 else output.float().mean(dim=1)
    return nn.functional.normalize(pooled, dim=1)


class Extractor(nn.Module):
    """``model`` cut at a named layer: ``[N,D]`` global, ``[N,S,C]`` local, softmax probs, or
    ``multiscale`` (every stage pooled and L2-normalized, concatenated: shallow stages carry
    texture, deep ones layout; from random init one deep layer throws the first away)."""

    def __init__(self, model: nn.Module, arch: str, layer: str, target: str = "single"):
        super().__init__()
        self.model = model
        self.target = target  # probs: softmax, or one sigmoid per output (multi-label, words)
        self.layer = check_layer(arch, layer)
        self.timm = arch_record(arch).is_timm
        if self.layer.kind == "probs" and num_outputs(model, arch) == 0:
            raise InputError(f"--layer probs: this {arch} has no classifier (its weights come without one); "
                             "take probs from a finetune checkpoint")
        self._stages: list[torch.Tensor] = []
        self._hooks = [] if not self.layer.module or self.timm else self._hook_modules(self.layer.module.split(","))

    def _hook_modules(self, names: list[str]) -> list:
        if self.layer.kind != "multiscale":
            return [self.model.get_submodule(names[0]).register_forward_hook(self._stop)]
        hooks = [self.model.get_submodule(name).register_forward_hook(self._keep) for name in names[:-1]]
        return hooks + [self.model.get_submodule(names[-1]).register_forward_hook(self._keep_and_stop)]

    def detach_hook(self) -> nn.Module:
        """Remove the hooks: the model runs whole again (another layer can be taken)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        return self.model

    @staticmethod
    def _stop(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        raise Captured(output)  # the rest of the network is not needed

    def _keep(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._stages.append(pooled_stage(output))  # pooled at once: a later in-place ReLU cannot change it

    def _keep_and_stop(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._keep(module, inputs, output)
        stages, self._stages = self._stages, []
        raise Captured(torch.cat(stages, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer.kind == "probs":
            logits = self.model(x).float()
            return torch.sigmoid(logits) if self.target in SIGMOID_TARGETS else torch.softmax(logits, dim=1)
        if self.timm:
            return self.timm_layer(x)
        self._stages = []
        try:
            self.model(x)
        except Captured as captured:
            out = captured.value
        else:
            raise RuntimeError(f"layer {self.layer.module} was not reached")
        if self.layer.kind == "local":
            return out.flatten(2).transpose(1, 2)  # [N,C,H,W] -> [N,H*W,C]
        return out.flatten(1)  # global, or multiscale (already pooled and concatenated)

    def timm_layer(self, x: torch.Tensor) -> torch.Tensor:
        """``pooled``: the classifier's input; ``last``: the last feature map or the patch tokens, ``[N,S,C]``;
        ``multiscale``: every stage of ``forward_intermediates`` pooled, L2-normalized and concatenated."""
        if self.layer.kind == "multiscale":
            return self.timm_stages(x)
        features = self.model.forward_features(x)
        if self.layer.kind == "global":
            return self.model.forward_head(features, pre_logits=True).flatten(1)
        if features.ndim == 3:  # tokens [N,T,C]: drop the class (and register) tokens
            return features[:, getattr(self.model, "num_prefix_tokens", 0):]
        if getattr(self.model, "output_fmt", "NCHW") == "NHWC":
            return features.flatten(1, 2)
        return features.flatten(2).transpose(1, 2)

    def timm_stages(self, x: torch.Tensor) -> torch.Tensor:
        if not hasattr(self.model, "forward_intermediates"):
            raise InputError(f"--layer multiscale: timm's {type(self.model).__name__} has no forward_intermediates")
        maps = self.model.forward_intermediates(x, intermediates_only=True)
        return torch.cat([pooled_stage(m) for m in maps], dim=1)

    def output_shape(self, input_size: int, device: str = "cpu") -> tuple[int, ...]:
        """The per-image output shape at ``input_size`` (one zero image through the net)."""
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                out = self(torch.zeros(1, 3, input_size, input_size, device=device))
        except RuntimeError as err:
            raise InputError(f"--input-size {input_size}: too small for this network "
                             f"({str(err).splitlines()[0]})") from None
        finally:
            self.train(was_training)
        return tuple(out.shape[1:])
