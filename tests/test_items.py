"""How a catalogue row reads on a result card and in the product picker (issue 19, item 5)."""

from mildnet.ui import items


def test_a_title_column_wins_then_what_the_photo_shows_then_a_tidy_id():
    assert items.title({"title": "Linen shirt", "product_id": "p0085", "category": "shirt"}) == "Linen shirt"
    assert items.title({"name": "Aria tote", "product_id": "sku-9"}) == "Aria tote"
    assert items.title({"product_id": "p0085", "category": "t-shirt", "colour": "olive", "pattern": "solid"}) == \
        "Olive solid t-shirt"
    assert items.title({"product_id": "12469.jpg", "image": "photos/12469.jpg"}) == "12469"
    assert items.title({"product_id": "", "image": "hats/red_cap.PNG"}) == "red cap"


def test_details_price_and_only_safe_links():
    row = {"title": "Aria tote", "category": "bag", "colour": "tan", "price": "EUR 49", "url": "https://shop.example/aria"}
    assert items.details(row) == "bag · tan · EUR 49"
    assert items.details({"category": "bag", "colour": "tan"}) == ""  # already said by the title
    assert items.link(row) == "https://shop.example/aria"
    assert items.link({"url": "javascript:alert(1)"}) is None and items.link({"url": "nan"}) is None


def test_class_folders_have_no_product_ids():
    # On clothing-small every same-class result was tagged "same-product".
    assert items.names_a_class({"image": "train/dress/0a1b.jpg", "product_id": "dress"})  # clothing-small
    assert items.names_a_class({"image": "hat/x.jpg", "product_id": "hat"})  # class folders added by a user
    assert not items.names_a_class({"image": "p00.jpg", "product_id": "sku1"})  # a labels CSV
    assert not items.names_a_class({"image": "images/p0003/wild-1.jpg", "product_id": "p0003"})  # the sample
    assert not items.names_a_class({"image": "photos/x.jpg", "product_id": "x.jpg"})  # a flat folder
