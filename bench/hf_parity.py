"""Parity of an exported moetrain checkpoint with Hugging Face transformers.

Loads <hf-dir> with transformers' DeepseekV2ForCausalLM (float32), runs the token ids that
bench/hf_logits.js used, and compares the logits with moetrain's (JSON from hf_logits.js).
Prints the relative error ||ours - theirs|| / ||theirs|| and the max abs difference.

    python3 bench/hf_parity.py <hf-dir> <moetrain-logits.json>
"""
import json
import sys

import torch
import transformers


def main() -> None:
    hf_dir, ours_path = sys.argv[1], sys.argv[2]
    ours = json.load(open(ours_path))
    ids = torch.tensor(ours["ids"], dtype=torch.long)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        theirs = model(input_ids=ids).logits.reshape(-1, model.config.vocab_size)
    mine = torch.tensor(ours["logits"], dtype=torch.float32).reshape(theirs.shape)
    rel = ((mine - theirs).norm() / theirs.norm()).item()
    print(f"hf parity: transformers {transformers.__version__}, {type(model).__name__}, "
          f"logits {tuple(theirs.shape)}: relative error {rel:.3e}, max abs diff {(mine - theirs).abs().max().item():.3e}, "
          f"argmax agreement {(mine.argmax(-1) == theirs.argmax(-1)).float().mean().item():.4f}")
    sys.exit(0 if rel < 1e-3 else 1)


if __name__ == "__main__":
    main()
