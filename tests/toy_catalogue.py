"""A tiny hand-made catalogue shared by the query-generator and GenFilt tests."""

from __future__ import annotations

from typing import Any


def toy_product(
    pid: str, title: str, ptype: str, colour: str, gender: str, usage: str = "Casual"
) -> dict[str, Any]:
    return {
        "product_id": pid,
        "title": title,
        "product_type": ptype,
        "master_category": "Apparel",
        "sub_category": "Topwear",
        "colour": colour,
        "gender": gender,
        "season": "Fall",
        "usage": usage,
        "year": "2012",
        "image_path": f"{pid}.jpg",
    }


TOY_PRODUCTS = [
    toy_product("1", "Nike Men Black Tshirt", "Tshirts", "Black", "Men", "Sports"),
    toy_product("2", "Nike Women Black Tshirt", "Tshirts", "Black", "Women", "Sports"),
    toy_product("3", "Puma Men Red Tshirt", "Tshirts", "Red", "Men"),
    toy_product("4", "Puma Men Black Casual Shoes", "Casual Shoes", "Black", "Men"),
    toy_product("5", "Fabindia Women Navy Blue Kurta", "Kurtas", "Navy Blue", "Women", "Ethnic"),
    toy_product("6", "Adidas Unisex Black Tshirt", "Tshirts", "Black", "Unisex", "Sports"),
    toy_product("7", "Flying Machine Blue Jeans", "Jeans", "Blue", "Men"),
    toy_product("8", "ADIDAS Originals Men Red Tshirt", "Tshirts", "Red", "Men"),
]
