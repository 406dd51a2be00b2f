"""Preprocessing before a model: the imaging sector of a frame, duplicate images."""

from fetalkit.preprocess.dedup import (DuplicatePair, ImageHashes, duplicate_groups, find_duplicate_pairs,
                                       find_duplicates, hamming_distance, hash_images, perceptual_hash)
from fetalkit.preprocess.sector import (Sector, crop_to_sector, detect_sector, detect_sector_in_frames,
                                        draw_sector_overlay, mask_from_description, sector_mask_from_geometry)

__all__ = ["DuplicatePair", "ImageHashes", "Sector", "crop_to_sector", "detect_sector", "detect_sector_in_frames",
           "draw_sector_overlay", "duplicate_groups", "find_duplicate_pairs", "find_duplicates", "hamming_distance",
           "hash_images", "mask_from_description", "perceptual_hash", "sector_mask_from_geometry"]
