"""Passwords fleetd makes are read as strings wherever nats-server meets them."""

from __future__ import annotations

import re

from infra import natsauth


def test_a_password_starts_with_a_letter_and_holds_only_letters_and_digits() -> None:
    made = {natsauth.new_password() for _ in range(5000)}
    assert len(made) == 5000
    for password in made:
        # An unquoted config value that starts with a digit is lexed as a number or a date.
        assert re.fullmatch(r"[a-z][0-9a-f]{48}", password), password
