"""Every installed back end passes the adaptor contract (tests/adaptor_contract.py) on digits_cnn."""

from tests.adaptor_contract import AdaptorContract


class TestAdaptors(AdaptorContract):
    pass
