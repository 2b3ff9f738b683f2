"""Build a tile codec: a nearest-neighbour codebook of a grid game's tiles, from recorded episodes.

    python scripts/build_codebook.py --data data/crafter --out runs/tiles --threshold 0.75
    python scripts/train.py --data data/crafter --codec runs/tiles --model tiles ...   # then train on it

Crafter at 64x64 draws 9x9 tiles of 7 px from pixel (0, 0) (the defaults); another grid game sets its own tile
size, offset and grid. A tile farther than --threshold (squared L2, pixels in [0, 1]) from every code becomes a new
code; codes never move. Prints the code count and the reconstruction PSNR on the val split.
"""
import argparse
import json

from generator.codec import save_codec, tile_codec_from_data


def pair(text: str) -> tuple[int, int]:
    parts = [int(p) for p in text.replace("x", ",").split(",")]
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected two integers like 9,9, got {text!r}")
    return parts[0], parts[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="episode dataset folder(s), comma-separated")
    parser.add_argument("--out", required=True, help="codec checkpoint folder to write")
    parser.add_argument("--tile-size", type=int, default=7, help="tile side in pixels (Crafter at 64x64: 7)")
    parser.add_argument("--tile-offset", type=pair, default=(0, 0), help="top,left pixel of the tile area")
    parser.add_argument("--tile-grid", type=pair, default=None, help="rows,cols of tiles (default: all that fit)")
    parser.add_argument("--threshold", type=float, default=0.75, help="new-code distance (squared L2 in [0, 1])")
    parser.add_argument("--max-codes", type=int, default=4096, help="codebook capacity")
    parser.add_argument("--frame-stride", type=int, default=2, help="use every N-th frame of each episode")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    args = parser.parse_args()
    codec, report = tile_codec_from_data(args.data, args.tile_size, args.tile_offset, args.tile_grid, args.threshold,
                                         args.max_codes, args.frame_stride, args.max_frames)
    save_codec(codec, args.out, extra_config={"report": report})
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
