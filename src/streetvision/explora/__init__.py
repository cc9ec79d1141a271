"""ExPLoRA (phase 4): continue DINOv2's self-supervised objective on target-domain images with PEFT adapters.

`adapters` puts LoRA/DoRA on a timm ViT and unfreezes the last blocks and the norms; `objective` holds the
DINO/iBOT/KoLeo losses, the fresh projection heads and the multi-crop views; `train` runs the student/EMA-
teacher loop with an atomic, resumable checkpoint; `probe` measures k-NN and linear-probe accuracy on
frozen features. Phase 4 itself (`streetvision.phases.phase4`) wires these to split artifacts.
"""
