"""Step1X-Edit's diffusion transformer: FLUX's MMDiT fed by a Qwen2.5-VL connector.

The token sequence is [noisy image tokens | reference image tokens] (both packed 2x2 latents); the
reference half carries its own RoPE index so the model can tell the two apart (index 0 for v1.0,
1 for v1.1 and v1.2). Text tokens come from the connector, not from T5/CLIP as in FLUX.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from stepedit.model.attention import embed_positions
from stepedit.model.connector import Connector
from stepedit.model.layers import (
    DoubleStreamBlock,
    LastLayer,
    MLPEmbedder,
    SingleStreamBlock,
    timestep_embedding,
)
from stepedit.model.presets import DiTConfig


class Step1XEditDiT(nn.Module):
    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        self.img_in = nn.Linear(config.in_channels, hidden, bias=True)
        self.time_in = MLPEmbedder(in_dim=256, hidden_dim=hidden)
        self.vector_in = MLPEmbedder(config.vec_in_dim, hidden)
        self.txt_in = nn.Linear(config.context_in_dim, hidden)
        self.double_blocks = nn.ModuleList(
            [
                DoubleStreamBlock(hidden, config.num_heads, config.mlp_ratio, config.qkv_bias)
                for _ in range(config.depth)
            ]
        )
        self.single_blocks = nn.ModuleList(
            [
                SingleStreamBlock(hidden, config.num_heads, config.mlp_ratio)
                for _ in range(config.depth_single_blocks)
            ]
        )
        self.final_layer = LastLayer(hidden, 1, config.out_channels)
        self.connector = Connector(
            in_channels=config.connector_in_channels,
            hidden_size=config.connector_hidden_size,
            heads_num=config.connector_heads,
            depth=config.connector_depth,
            pooled_dim=config.vec_in_dim,
            has_scale_factor=config.has_scale_factor,
        )
        # v1.2: raw LLM hidden states of the prompt, projected and added to the connector's tokens.
        self.text_token_mapping: nn.Linear | None = None
        if config.has_text_token_mapping:
            self.text_token_mapping = nn.Linear(config.connector_in_channels, config.context_in_dim)

    def forward(
        self,
        img: Tensor,
        img_ids: Tensor,
        txt_ids: Tensor,
        timesteps: Tensor,
        llm_embedding: Tensor,
        t_vec: Tensor,
        mask: Tensor,
        text_embeddings: Tensor | None = None,
        text_mask: Tensor | None = None,
    ) -> Tensor:
        """Predict the flow velocity for every image token.

        img [B, L_img + L_ref, 64]; img_ids [B, L_img + L_ref, 3]; txt_ids [B, L_txt, 3];
        timesteps and t_vec [B] in [0, 1]; llm_embedding [B, L_txt, C_llm]; mask [B, L_txt]
        (1 = real token); v1.2 only: text_embeddings [B, L_txt, C_llm], text_mask [B, L_txt].
        Returns [B, L_img + L_ref, 64] (callers keep the first L_img tokens).
        """
        if img.ndim != 3 or llm_embedding.ndim != 3:
            raise ValueError("img and llm_embedding must have 3 dimensions [B, L, C]")
        txt, y = self.connector(llm_embedding, t_vec, mask)  # [B, L_txt, ctx], [B, 768]
        if self.text_token_mapping is not None:
            if text_embeddings is None or text_mask is None:
                raise ValueError("this v1.2 model needs text_embeddings and text_mask")
            mapped = self.text_token_mapping(text_embeddings)  # [B, L_txt, ctx]
            txt = txt + mapped * text_mask[:, :, None]
        elif text_embeddings is not None:
            raise ValueError(f"a {self.config.version} model takes no text_embeddings")

        img = self.img_in(img)  # [B, L, hidden]
        vec = self.time_in(timestep_embedding(timesteps, 256))  # [B, hidden]
        vec = vec + self.vector_in(y)
        txt = self.txt_in(txt)  # [B, L_txt, hidden]

        ids = torch.cat((txt_ids, img_ids), dim=1)  # [B, L_txt + L, 3]
        pe = embed_positions(ids, self.config.axes_dim, self.config.theta)

        for block in self.double_blocks:
            img, txt = block(img=img, txt=txt, vec=vec, pe=pe)
        joint = torch.cat((txt, img), dim=1)  # [B, L_txt + L, hidden]
        for block in self.single_blocks:
            joint = block(joint, vec=vec, pe=pe)
        img = joint[:, txt.shape[1] :, ...]  # [B, L, hidden]
        return self.final_layer(img, vec)  # [B, L, 64]
