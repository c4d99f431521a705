"""FID feature extraction throughput through adasched.fid's clean-fid code path.

Times :func:`adasched.fid.image_features` on ``--num`` random 32x32 RGB images for both protocols
(``legacy_tensorflow``: the network resizes inside; ``clean``: clean-fid's PIL resize per image on the
CPU first).  The network is clean-fid's Inception TorchScript when ``--resources`` holds it, otherwise a
stand-in with Inception-v3's shape and cost (torchvision ``inception_v3``, random weights, 2048-d pool
features): the timing, not the numbers, is what this measures.

    PYTHONPATH=. python benchmarks/fid_speed.py --device cuda --num 10000
    PYTHONPATH=. python benchmarks/fid_speed.py --num 200        # CPU
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time

import torch

from adasched.fid import FeatureExtractor, image_features


def stand_in(device, resize_inside: bool):
    import torchvision

    net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False).to(device).eval()
    net.fc = torch.nn.Identity()

    def fn(x):  # clean-fid hands [B, 3, H, W] in [0, 255]
        x = x.to(device)
        if resize_inside:
            x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        with torch.no_grad():
            return net((x - 128) / 128)

    return fn


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--num", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=500)
    args = ap.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"# {datetime.date.today()}, {name}, torch {torch.__version__}, {args.num} images 32x32, "
          f"batch {args.batch}, stand-in Inception-v3 (random weights)")
    images = torch.rand(args.num, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    print("| protocol | images/s | seconds |\n|---|---|---|")
    for protocol, inside in (("legacy_tensorflow", True), ("clean", False)):
        ex = FeatureExtractor(name="stand-in", sha256="-", fn=stand_in(device, inside), mode=protocol)
        image_features(images[: args.batch], ex, batch_size=args.batch, device=device)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        image_features(images, ex, batch_size=args.batch, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        print(f"| {protocol} | {args.num / dt:,.0f} | {dt:.1f} |")


if __name__ == "__main__":
    main()
