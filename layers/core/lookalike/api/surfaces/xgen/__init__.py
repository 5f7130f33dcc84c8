"""XGen image search (seeds/000), served by the reverse_search function."""
