"""The blob layout (lookalike.keys): every key a tenant's data uses comes from one module."""

from __future__ import annotations

from lookalike import keys


def test_the_layout_round_trips() -> None:
    photo = keys.new_image_key("demo", "shoes", "item-1")
    assert photo.startswith(keys.images_prefix("demo", "shoes") + "item-1/")
    assert photo != keys.new_image_key("demo", "shoes", "item-1")  # a version per write
    assert keys.item_id_of("demo", "shoes", photo) == "item-1"
    assert keys.item_id_of("demo", "shoes", keys.features_key(photo)) == "item-1"
    assert keys.photo_key(keys.features_key(photo)) == photo and keys.photo_key(photo) == photo
    assert keys.item_id_of("demo", "other", photo) == ""
    collection = keys.collection_prefix("demo", "shoes")
    for key in (photo, keys.failures_key("demo", "shoes"), keys.leases_prefix("demo", "shoes") + "x"):
        assert key.startswith(collection)  # deleting the collection's prefix deletes them all
    assert not keys.collection_prefix("demo", "shoes-2").startswith(collection)
    assert keys.anchor_key("demo", "ab12").startswith("anchors/demo/")  # one prefix for the lifecycle rule
