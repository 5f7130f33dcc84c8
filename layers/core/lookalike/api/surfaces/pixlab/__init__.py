"""PixLab img-embed (seeds/002), served by the embed function."""
