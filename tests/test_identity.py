"""Tests for mimirlite.identity: spec vectors, signatures, key files and fuzzing."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from hypothesis import given
from hypothesis import strategies as st

from mimirlite.errors import InvalidKeyError
from mimirlite.identity import KeyFileError, KeyPair, KeyType, PeerId, PublicKey
from mimirlite.wire.protobuf import encode_bytes_field, encode_varint_field, iter_fields
from mimirlite.wire.varint import encode_uvarint

# Test vectors from the "Test vectors" table of the libp2p peer-ids spec (peer-ids/peer-ids.md).
SPEC_ECDSA_PRIVATE = bytes.fromhex(
    "08031279307702010104203e5b1fe9712e6c314942a750bd67485de3c1efe85b1bfb520ae8f9ae3dfa4a4ca00a06082a"
    "8648ce3d030107a14403420004de3d300fa36ae0e8f5d530899d83abab44abf3161f162a4bc901d8e6ecda020e8b6d5f"
    "8da30525e71d6851510c098e5c47c646a597fb4dcec034e9f77c409e62"
)
SPEC_ECDSA_PUBLIC = bytes.fromhex(
    "0803125b3059301306072a8648ce3d020106082a8648ce3d03010703420004de3d300fa36ae0e8f5d530899d83abab44"
    "abf3161f162a4bc901d8e6ecda020e8b6d5f8da30525e71d6851510c098e5c47c646a597fb4dcec034e9f77c409e62"
)
SPEC_ED25519_PRIVATE = bytes.fromhex(
    "080112407e0830617c4a7de83925dfb2694556b12936c477a0e1feb2e148ec9da60fee7d1ed1e8fae2c4a144b8be8fd4"
    "b47bf3d3b34b871c3cacf6010f0e42d474fce27e"
)
SPEC_ED25519_PUBLIC = bytes.fromhex(
    "080112201ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e"
)
SPEC_SECP256K1_PRIVATE = bytes.fromhex(
    "0802122053dadf1d5a164d6b4acdb15e24aa4c5b1d3461bdbd42abedb0a4404d56ced8fb"
)
SPEC_SECP256K1_PUBLIC = bytes.fromhex(
    "08021221037777e994e452c21604f91de093ce415f5432f701dd8cd1a7a6fea0e630bfca99"
)
SPEC_RSA_PRIVATE = bytes.fromhex(
    "080012ae123082092a0201000282020100e1beab071d08200bde24eef00d049449b07770ff9910257b2d7d5dda242ce8"
    "f0e2f12e1af4b32d9efd2c090f66b0f29986dbb645dae9880089704a94e5066d594162ae6ee8892e6ec70701db0a6c44"
    "5c04778eb3de1293aa1a23c3825b85c6620a2bc3f82f9b0c309bc0ab3aeb1873282bebd3da03c33e76c21e9beb172fd4"
    "4c9e43be32e2c99827033cf8d0f0c606f4579326c930eb4e854395ad941256542c793902185153c474bed109d6ff5141"
    "ebf9cd256cf58893a37f83729f97e7cb435ec679d2e33901d27bb35aa0d7e20561da08885ef0abbf8e2fb48d6a548704"
    "7a9ecb1ad41fa7ed84f6e3e8ecd5d98b3982d2a901b4454991766da295ab78822add5612a2df83bcee814cf50973e80d"
    "7ef38111b1bd87da2ae92438a2c8cbcc70b31ee319939a3b9c761dbc13b5c086d6b64bf7ae7dacc14622375d92a8ff9a"
    "f7eb962162bbddebf90acb32adb5e4e4029f1c96019949ecfbfeffd7ac1e3fbcc6b6168c34be3d5a2e5999fcbb39bba7"
    "adbca78eab09b9bc39f7fa4b93411f4cc175e70c0a083e96bfaefb04a9580b4753c1738a6a760ae1afd851a1a4bdad23"
    "1cf56e9284d832483df215a46c1c21bdf0c6cfe951c18f1ee4078c79c13d63edb6e14feaeffabc90ad317e4875fe6481"
    "01b0864097e998f0ca3025ef9638cd2b0caecd3770ab54a1d9c6ca959b0f5dcbc90caeefc4135baca6fd475224269bbe"
    "1b02030100010282020100a472ffa858efd8588ce59ee264b957452f3673acdf5631d7bfd5ba0ef59779c231b0bc838a"
    "8b14cae367b6d9ef572c03c7883b0a3c652f5c24c316b1ccfd979f13d0cd7da20c7d34d9ec32dfdc81ee7292167e706d"
    "705efde5b8f3edfcba41409e642f8897357df5d320d21c43b33600a7ae4e505db957c1afbc189d73f0b5d972d9aaaeeb"
    "232ca20eebd5de6fe7f29d01470354413cc9a0af1154b7af7c1029adcd67c74b4798afeb69e09f2cb387305e73a1b5f4"
    "50202d54f0ef096fe1bde340219a1194d1ac9026e90b366cce0c59b239d10e4888f52ca1780824d39ae01a6b9f4dd605"
    "9191a7f12b2a3d8db3c2868cd4e5a5862b8b625a4197d52c6ac77710116ebd3ced81c4d91ad5fdfbed68312ebce7eea4"
    "5c1833ca3acf7da2052820eacf5c6b07d086dabeb893391c71417fd8a4b1829ae2cf60d1749d0e25da19530d889461c2"
    "1da3492a8dc6ccac7de83ac1c2185262c7473c8cc42f547cc9864b02a8073b6aa54a037d8c0de3914784e6205e83d979"
    "18b944f11b877b12084c0dd1d36592f8a4f8b8da5bb404c3d2c079b22b6ceabfbcb637c0dbe0201f0909d533f8bf308a"
    "da47aee641a012a494d31b54c974e58b87f140258258bb82f31692659db7aa07e17a5b2a0832c24e122d3a8babcc9ee7"
    "4cbb07d3058bb85b15f6f6b2674aba9fd34367be9782d444335fbed31e3c4086c652597c27104938b47fa10282010100"
    "e9fdf843c1550070ca711cb8ff28411466198f0e212511c3186623890c0071bf6561219682fe7dbdfd81176eba7c4fab"
    "a21614a20721e0fcd63768e6d925688ecc90992059ac89256e0524de90bf3d8a052ce6a9f6adafa712f3107a016e20c8"
    "0255c9e37d8206d1bc327e06e66eb24288da866b55904fd8b59e6b2ab31bc5eab47e597093c63fab7872102d57b4c589"
    "c66077f534a61f5f65127459a33c91f6db61fc431b1ae90be92b4149a3255291baf94304e3efb77b1107b5a3bda91135"
    "9c40a53c347ff9100baf8f36dc5cd991066b5bdc28b39ed644f404afe9213f4d31c9d4e40f3a5f5e3c39bebeb244e841"
    "37544e1a1839c1c8aaebf0c78a7fad590282010100f6fa1f1e6b803742d5490b7441152f500970f46feb0b73a6e4baba"
    "2aaf3c0e245ed852fc31d86a8e46eb48e90fac409989dfee45238f97e8f1f8e83a136488c1b04b8a7fb695f37b861630"
    "7ff8a8d63e8cfa0b4fb9b9167ffaebabf111aa5a4344afbabd002ae8961c38c02da76a9149abdde93eb389eb32595c29"
    "ba30d8283a7885218a5a9d33f7f01dbdf85f3aad016c071395491338ec318d39220e1c7bd69d3d6b520a13a30d745c10"
    "2b827ad9984b0dd6aed73916ffa82a06c1c111e7047dcd2668f988a0570a71474992eecf416e068f029ec323d5d635fd"
    "24694fc9bf96973c255d26c772a95bf8b7f876547a5beabf86f06cd21b67994f944e7a5493028201010095b02fd30069"
    "e547426a8bea58e8a2816f33688dac6c6f6974415af8402244a22133baedf34ce499d7036f3f19b38eb00897c18949b0"
    "c5a25953c71aeeccfc8f6594173157cc854bd98f16dffe8f28ca13b77eb43a2730585c49fc3f608cd811bb54b03b84bd"
    "daa8ef910988567f783012266199667a546a18fd88271fbf63a45ae4fd4884706da8befb9117c0a4d73de5172f8640b1"
    "091ed8a4aea3ed4641463f5ff6a5e3401ad7d0c92811f87956d1fd5f9a1d15c7f3839a08698d9f35f9d966e5000f7cb2"
    "655d7b6c4adcd8a9d950ea5f61bb7c9a33c17508f9baa313eecfee4ae493249ebe05a5d7770bbd3551b2eeb752e3649e"
    "0636de08e3d672e66cb90282010100ad93e4c31072b063fc5ab5fe22afacece775c795d0efdf7c704cfc027bde0d626a"
    "7646fc905bb5a80117e3ca49059af14e0160089f9190065be9bfecf12c3b2145b211c8e89e42dd91c38e9aa23ca73697"
    "063564f6f6aa6590088a738722df056004d18d7bccac62b3bafef6172fc2a4b071ea37f31eff7a076bcab7dd144e51a9"
    "da8754219352aef2c73478971539fa41de4759285ea626fa3c72e7085be47d554d915bbb5149cb6ef835351f23104304"
    "9cd941506a034bf2f8767f3e1e42ead92f91cb3d75549b57ef7d56ac39c2d80d67f6a2b4ca192974bfc5060e2dd17121"
    "7971002193dba12e7e4133ab201f07500a90495a38610279b13a48d54f0c99028201003e3a1ac0c2b67d54ed5c4bbe04"
    "a7db99103659d33a4f9d35809e1f60c282e5988dddc964527f3b05e6cc890eab3dcb571d66debf3a5527704c87264b39"
    "54d7265f4e8d2c637dd89b491b9cf23f264801f804b90454d65af0c4c830d1aef76f597ef61b26ca857ecce9cb78d4f6"
    "c2218c00d2975d46c2b013fbf59b750c3b92d8d3ed9e6d1fd0ef1ec091a5c286a3fe2dead292f40f380065731e2079eb"
    "b9f2a7ef2c415ecbb488da98f3a12609ca1b6ec8c734032c8bd513292ff842c375d4acd1b02dfb206b24cd815f8e2f9d"
    "4af8e7dea0370b19c1b23cc531d78b40e06e1119ee2e08f6f31c6e2e8444c568d13c5d451a291ae0c9f1d4f27d23b3a0"
    "0d60ad"
)
SPEC_RSA_PUBLIC = bytes.fromhex(
    "080012a60430820222300d06092a864886f70d01010105000382020f003082020a0282020100e1beab071d08200bde24"
    "eef00d049449b07770ff9910257b2d7d5dda242ce8f0e2f12e1af4b32d9efd2c090f66b0f29986dbb645dae988008970"
    "4a94e5066d594162ae6ee8892e6ec70701db0a6c445c04778eb3de1293aa1a23c3825b85c6620a2bc3f82f9b0c309bc0"
    "ab3aeb1873282bebd3da03c33e76c21e9beb172fd44c9e43be32e2c99827033cf8d0f0c606f4579326c930eb4e854395"
    "ad941256542c793902185153c474bed109d6ff5141ebf9cd256cf58893a37f83729f97e7cb435ec679d2e33901d27bb3"
    "5aa0d7e20561da08885ef0abbf8e2fb48d6a5487047a9ecb1ad41fa7ed84f6e3e8ecd5d98b3982d2a901b4454991766d"
    "a295ab78822add5612a2df83bcee814cf50973e80d7ef38111b1bd87da2ae92438a2c8cbcc70b31ee319939a3b9c761d"
    "bc13b5c086d6b64bf7ae7dacc14622375d92a8ff9af7eb962162bbddebf90acb32adb5e4e4029f1c96019949ecfbfeff"
    "d7ac1e3fbcc6b6168c34be3d5a2e5999fcbb39bba7adbca78eab09b9bc39f7fa4b93411f4cc175e70c0a083e96bfaefb"
    "04a9580b4753c1738a6a760ae1afd851a1a4bdad231cf56e9284d832483df215a46c1c21bdf0c6cfe951c18f1ee4078c"
    "79c13d63edb6e14feaeffabc90ad317e4875fe648101b0864097e998f0ca3025ef9638cd2b0caecd3770ab54a1d9c6ca"
    "959b0f5dcbc90caeefc4135baca6fd475224269bbe1b0203010001"
)

# Cross-implementation vectors: an RSA public key with its sha2-256 peer ID multihash from the
# js-libp2p peer-id test fixtures, and an RSA private key with its peer ID from the go-libp2p
# core/peer tests.
JS_RSA_PEER_ID_HEX = "122019318b6e5e0cf93a2314bf01269a2cc23cd3dcd452d742cdb9379d8646f6e4a9"
JS_RSA_PUBLIC = base64.b64decode(
    "CAASpgIwggEiMA0GCSqGSIb3DQEBAQUAA4IBDwAwggEKAoIBAQC2SKo/HMFZeBml1AF3XijzrxrfQXdJzjePBZAbdxqKR1Mc"
    "6juRHXij6HXYPjlAk01BhF1S3Ll4Lwi0cAHhggf457sMg55UWyeGKeUv0ucgvCpBwlR5cQ020i0MgzjPWOLWq1rtvSbNcAi2"
    "ZEVn6+Q2EcHo3wUvWRtLeKz+DZSZfw2PEDC+DGPJPl7f8g7zl56YymmmzH9liZLNrzg/qidokUv5u1pdGrcpLuPNeTODk0cq"
    "KB+OUbuKj9GShYECCEjaybJDl9276oalL9ghBtSeEv20kugatTvYy590wFlJkkvyl+nPxIH0EEYMKK9XRWlu9XYnoSfboiwc"
    "v8M3SlsjAgMBAAE="
)
GO_RSA_PRIVATE = base64.b64decode(
    "CAASqAkwggSkAgEAAoIBAQC3hjPtPli71gFNzGJ6rUhYdb65BDwW7IrniEaZKi6z"
    "tW4Iz0MouEJY8GPG1iQfqZKp5w9H2ENh4I1bk2dsezrJ7Nneg4Eqd78CmeHTAgaP"
    "3PKsxohdMo/TOFNxwl8SkEF8FyVbio2TCoijYNHUuprZuq7MPEAJYr3Z1eEkM/xR"
    "pMp3YI9S2SYsZQxbmmQ0/GfHOEvYajdow1qttreVTQkvmCppKtNLEU5InpX/W5fe"
    "aQCj0pd7l74daZgM2WWz3juEUCVG7tdRUPg7ix1TYosbN96CKC3q2MJxe/wJ9gR5"
    "Jvjnaaaoon+mci5vrKzxdKBDmZ/ZbLiHDfVljMkbdOQLAgMBAAECggEAEULaF3JJ"
    "vkD+lmamzIsHxuosKhKv5CgTWHuEyFsjUVu7IbD8zBOoidzyRX1WoHO+i6Rj14oL"
    "rGUGZpqSm61rdhqE01zjBS+GE6SNjN8f5uANIxr5MGrVBDTEBGsXrhNLVXSH2vhJ"
    "II9ZEqTEl5GFhvz7+9Ge5EMZQCfRqSoKjVMdrs+Rueuusr9p0wNg9PH1myA+cXGt"
    "iNZA17Rj2IiWVZLDgYNo4DVQUt4mFb+wTJW4NSspGKaFebpn0hf4z21laoGoJqTC"
    "cNETJw+QwQ0uDaRoYotTLT2/55e8XBFTdcTg5cmbZoKgMyGqZEHfRyD9reVDAZlM"
    "EZwKtrm41kz94QKBgQDmPp5zVtFXQNONmje1NE0IjCaUKcqURXk4ZiILztfT9XLC"
    "OXAUCs3TCq21jirCkZZ6gLfo12Wx0xJYmsKlaUOGNTa8FI5Xa7OyheYKixUvV6FW"
    "J95P/sNuWscTjh7oZHgZk/L3yKrNzNBz7awComwV6qciXW7EP1uACHf5fS/RdQKB"
    "gQDMDa38W9OeegRDrhCeYGsniJK7btOCzhNooruQKPPXxk+O4dyJm7VBbC/3Ch55"
    "a83W66T4k0Q7ysLVRT5Vqd5z3AM0sEM3ZoxUKCinG3NwPxVeXcoLasyEiq1vOFK6"
    "GqZKCMThCj7ZpbkWy0DPJagnYfZGC62lammuj+XQx7mvfwKBgQCTKhka/bXmgD/3"
    "9UeAIcLPIM2TzDZ4mQNHIjjGtVnMV8kXDaFung06xEuNjSYVoPq+qEFkqTCN/axv"
    "R9P76BFJ2f93LehhRizggacsvAM5dFhh+i+lj+AYTBuMiz2EKpt9NcyJxhAuZKgk"
    "QRi9wlU1mPtlArVG6HwylLcil3qV9QKBgQDJHtaU/KEY+2TGnIMuxxP2lEsjyLla"
    "nOlOYc8C6Qpma8UwrHelfj5p7Eteb6/Xt6Tbp8kjZGuFj3T3plcpMdPbWEgkn3Kw"
    "4TeBH0/qXUkrolHagBDLrglEvjbxf48ydV/fasM6l9GYzhofWFhZk+EoaArHwWz2"
    "tGrTrmsynBjt2wKBgErdYe+zZ2Wo+wXQGAoZi4pfcwiw4a97Kdh0dx+WZz7acHms"
    "h+V20VRmEHm5h8WnJ/Wv5uK94t6NY17wzjQ7y2BN5mY5cA2cZAcpeqtv/N06tH4S"
    "cn1UEuRB8VpwkjaPUNZhqtYK40qff2OTdJy8taFtQiN7fz9euWTC78zjph2s"
)
GO_RSA_PEER_ID = "QmcJeseojbPW9hSejUM1sQ1a2QmbrryPK4Z8pWbRUPaYEn"

SPEC_ED25519_PEER_ID = "12D3KooWBtg3aaRMjxwedh83aGiUkwSxDwUZkzuJcfaqUmo7R3pq"
B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
B32_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"


def key_data(message: bytes) -> bytes:
    """The Data field of a key protobuf, read independently of the code under test."""
    return next(bytes(v) for f, _, v in iter_fields(message) if f == 2 and isinstance(v, bytes))


def identity_multihash(encoded_key: bytes) -> bytes:
    return b"\x00" + bytes([len(encoded_key)]) + encoded_key


def sha256_multihash(encoded_key: bytes) -> bytes:
    return b"\x12\x20" + hashlib.sha256(encoded_key).digest()


def spki(key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def compressed(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)


# --- spec and cross-implementation vectors -----------------------------------------------------


@pytest.mark.parametrize(
    ("vector", "key_type", "inlined"),
    [
        (SPEC_ED25519_PUBLIC, KeyType.ED25519, True),
        (SPEC_SECP256K1_PUBLIC, KeyType.SECP256K1, True),
        (SPEC_ECDSA_PUBLIC, KeyType.ECDSA, False),
        (SPEC_RSA_PUBLIC, KeyType.RSA, False),
    ],
)
def test_spec_public_key_vectors(vector: bytes, key_type: KeyType, inlined: bool) -> None:
    key = PublicKey.from_protobuf(vector)
    assert key.key_type == key_type
    assert key.data == key_data(vector)
    assert key.to_protobuf() == vector
    peer_id = PeerId.from_public_key(key)
    expected = identity_multihash(vector) if inlined else sha256_multihash(vector)
    assert peer_id.to_bytes() == expected
    assert peer_id.public_key() == (key if inlined else None)
    assert peer_id.matches_public_key(key)
    assert PeerId.from_string(str(peer_id)) == peer_id
    assert PeerId.from_string(peer_id.to_cid_string()) == peer_id


def test_spec_ed25519_peer_id() -> None:
    peer_id = PeerId.from_public_key(PublicKey.from_protobuf(SPEC_ED25519_PUBLIC))
    assert str(peer_id) == SPEC_ED25519_PEER_ID
    assert repr(peer_id) == f"PeerId('{SPEC_ED25519_PEER_ID}')"
    assert PeerId.from_string(SPEC_ED25519_PEER_ID) == peer_id


def test_spec_ed25519_private_key() -> None:
    pair = KeyPair.from_private_protobuf(SPEC_ED25519_PRIVATE)
    assert pair.to_private_protobuf() == SPEC_ED25519_PRIVATE
    assert pair.public_key.to_protobuf() == SPEC_ED25519_PUBLIC
    assert str(pair.peer_id) == SPEC_ED25519_PEER_ID


def test_spec_private_vectors_give_their_public_keys() -> None:
    secp = ec.derive_private_key(int.from_bytes(key_data(SPEC_SECP256K1_PRIVATE), "big"), ec.SECP256K1())
    assert compressed(secp.public_key()) == key_data(SPEC_SECP256K1_PUBLIC)
    ecdsa = serialization.load_der_private_key(key_data(SPEC_ECDSA_PRIVATE), None)
    assert isinstance(ecdsa, ec.EllipticCurvePrivateKey)
    assert spki(ecdsa.public_key()) == key_data(SPEC_ECDSA_PUBLIC)
    rsa_key = serialization.load_der_private_key(key_data(SPEC_RSA_PRIVATE), None)
    assert isinstance(rsa_key, rsa.RSAPrivateKey)
    assert spki(rsa_key.public_key()) == key_data(SPEC_RSA_PUBLIC)


@pytest.mark.parametrize("vector", [SPEC_SECP256K1_PRIVATE, SPEC_ECDSA_PRIVATE, SPEC_RSA_PRIVATE])
def test_only_ed25519_private_keys_are_accepted(vector: bytes) -> None:
    with pytest.raises(InvalidKeyError, match="only Ed25519"):
        KeyPair.from_private_protobuf(vector)


def test_js_rsa_vector() -> None:
    key = PublicKey.from_protobuf(JS_RSA_PUBLIC)
    assert key.key_type == KeyType.RSA
    assert key.to_protobuf() == JS_RSA_PUBLIC
    assert PeerId.from_public_key(key).to_bytes().hex() == JS_RSA_PEER_ID_HEX


def test_go_rsa_vector() -> None:
    private = serialization.load_der_private_key(key_data(GO_RSA_PRIVATE), None)
    assert isinstance(private, rsa.RSAPrivateKey)
    key = PublicKey(KeyType.RSA, spki(private.public_key()))
    peer_id = PeerId.from_public_key(key)
    assert str(peer_id) == GO_RSA_PEER_ID
    assert PeerId.from_string(GO_RSA_PEER_ID) == peer_id
    assert peer_id.public_key() is None
    assert peer_id.matches_public_key(key)


def test_spec_string_examples() -> None:
    as_cid = PeerId.from_string("bafzbeie5745rpv2m6tjyuugywy4d5ewrqgqqhfnf445he3omzpjbx5xqxe")
    as_b58 = PeerId.from_string("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")
    assert as_cid == as_b58
    assert as_b58.to_bytes()[:2] == b"\x12\x20"
    assert str(as_cid) == "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
    assert as_b58.to_cid_string() == "bafzbeie5745rpv2m6tjyuugywy4d5ewrqgqqhfnf445he3omzpjbx5xqxe"
    assert as_b58.public_key() is None

    ed = PeerId.from_string("12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA")
    key = ed.public_key()
    assert key is not None
    assert key.key_type == KeyType.ED25519
    assert PeerId.from_public_key(key) == ed


def test_ed25519_cid_round_trip() -> None:
    peer_id = PeerId.from_string(SPEC_ED25519_PEER_ID)
    text = peer_id.to_cid_string()
    assert text.startswith("bafzaa")
    assert text == text.lower()
    assert "=" not in text
    assert PeerId.from_string(text) == peer_id
    # A multibase base58btc CID names the same peer.
    assert PeerId.from_string("z" + _b58(b"\x01\x72" + peer_id.to_bytes())) == peer_id


def _b58(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = B58_ALPHABET[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


# --- peer ID validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Qm",
        "1",
        "hello",
        "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5",  # one character short
        "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N0",  # '0' is not base58
        "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SAx",
        "bafkreifoybygix7fh3r3g5rqle3wcnhqldgdg4shzf4k3ulyw3gn7mabt4",  # raw codec, not libp2p-key
        "BAFZBEIE5745RPV2M6TJYUUGYWY4D5EWRQGQQHFNF445HE3OMZPJBX5XQXE",  # upper case base32
        "bafzbeie5745rpv2m6tjyuugywy4d5ewrqgqqhfnf445he3omzpjbx5xqx",  # truncated
        "bafzbeie5745rpv2m6tjyuugywy4d5ewrqgqqhfnf445he3omzpjbx5xqxf",  # non-zero trailing bits
        "Qm" + "z" * 500,
    ],
)
def test_from_string_rejects(text: str) -> None:
    with pytest.raises(InvalidKeyError):
        PeerId.from_string(text)


@pytest.mark.parametrize(
    "buf",
    [
        b"",
        b"\x12",
        b"\x12\x20" + b"\x01" * 31,
        b"\x12\x1f" + b"\x01" * 31,
        b"\x12\x20" + b"\x01" * 33,
        b"\x13\x20" + b"\x01" * 32,  # sha2-512 code
        b"\x00\x04\x08\x01\x12\x00",  # identity multihash of a malformed Ed25519 key
        b"\x00\x02\x08\x01",
        identity_multihash(encode_varint_field(1, 0) + encode_bytes_field(2, b"\x30" * 39)),  # 43 bytes
        b"\x80\x00\x20",  # non-minimal varint code
    ],
)
def test_from_bytes_rejects(buf: bytes) -> None:
    with pytest.raises(InvalidKeyError):
        PeerId.from_bytes(buf)


def test_peer_id_equality_hash_and_str_cache() -> None:
    a = PeerId.from_string(SPEC_ED25519_PEER_ID)
    b = PeerId.from_bytes(a.to_bytes())
    assert a == b
    assert a != PeerId.from_string(GO_RSA_PEER_ID)
    assert a != SPEC_ED25519_PEER_ID
    assert {a: 1}[b] == 1
    assert str(a) is str(a)
    assert PeerId(a.to_bytes()) == a


# --- public key decoding -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "buf",
    [
        b"",
        encode_varint_field(1, 1),
        encode_bytes_field(2, b"\x01" * 32),
        encode_bytes_field(2, b"\x01" * 32) + encode_varint_field(1, 1),  # fields out of order
        encode_varint_field(1, 1) + encode_varint_field(1, 1) + encode_bytes_field(2, b"\x01" * 32),
        SPEC_ED25519_PUBLIC + encode_varint_field(3, 0),  # extra field
        encode_varint_field(1, 4) + encode_bytes_field(2, b"\x01" * 32),  # unknown key type
        encode_bytes_field(1, b"\x01") + encode_bytes_field(2, b"\x01" * 32),  # Type with wrong wire type
        encode_varint_field(1, 1) + encode_bytes_field(2, b"\x01" * 31),
        encode_varint_field(1, 2) + encode_bytes_field(2, b"\x05" + b"\x01" * 32),
        encode_varint_field(1, 3) + encode_bytes_field(2, b""),
        b"\x08\x81\x00\x12\x20" + b"\x01" * 32,  # non-minimal varint
        SPEC_ED25519_PUBLIC[:-1],
    ],
)
def test_public_key_from_protobuf_rejects(buf: bytes) -> None:
    with pytest.raises(InvalidKeyError):
        PublicKey.from_protobuf(buf)


# --- signatures --------------------------------------------------------------------------------


def test_ed25519_sign_verify() -> None:
    pair = KeyPair.generate()
    signature = pair.sign(b"hello")
    assert len(signature) == 64
    assert pair.public_key.verify(b"hello", signature)
    assert not pair.public_key.verify(b"hello!", signature)
    assert not pair.public_key.verify(b"hello", bytes([signature[0] ^ 1]) + signature[1:])
    assert not pair.public_key.verify(b"hello", signature[:-1])
    assert not KeyPair.generate().public_key.verify(b"hello", signature)
    assert pair.peer_id.matches_public_key(pair.public_key)
    assert pair.peer_id.public_key() == pair.public_key
    assert not pair.peer_id.matches_public_key(KeyPair.generate().public_key)


def test_spec_ed25519_key_signs_verifiably() -> None:
    pair = KeyPair.from_private_protobuf(SPEC_ED25519_PRIVATE)
    assert PublicKey.from_protobuf(SPEC_ED25519_PUBLIC).verify(b"msg", pair.sign(b"msg"))


def test_secp256k1_verify() -> None:
    private = ec.generate_private_key(ec.SECP256K1())
    signature = private.sign(b"payload", ec.ECDSA(hashes.SHA256()))
    key = PublicKey.from_protobuf(
        encode_varint_field(1, 2) + encode_bytes_field(2, compressed(private.public_key()))
    )
    assert len(key.data) == 33
    assert key.verify(b"payload", signature)
    assert not key.verify(b"payload?", signature)
    assert not key.verify(b"payload", signature[:-2])
    uncompressed = private.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert PublicKey(KeyType.SECP256K1, uncompressed).verify(b"payload", signature)
    assert len(PeerId.from_public_key(key).to_bytes()) == 2 + 37


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1()])
def test_ecdsa_verify(curve: ec.EllipticCurve) -> None:
    private = ec.generate_private_key(curve)
    signature = private.sign(b"payload", ec.ECDSA(hashes.SHA256()))
    key = PublicKey.from_protobuf(
        encode_varint_field(1, 3) + encode_bytes_field(2, spki(private.public_key()))
    )
    assert key.verify(b"payload", signature)
    assert not key.verify(b"other", signature)
    assert not key.verify(b"payload", b"\x30\x00")


def test_ecdsa_rejects_secp256k1_spki() -> None:
    private = ec.generate_private_key(ec.SECP256K1())
    signature = private.sign(b"payload", ec.ECDSA(hashes.SHA256()))
    assert not PublicKey(KeyType.ECDSA, spki(private.public_key())).verify(b"payload", signature)


@pytest.fixture(scope="module")
def rsa_2048() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_rsa_verify(rsa_2048: rsa.RSAPrivateKey) -> None:
    signature = rsa_2048.sign(b"payload", padding.PKCS1v15(), hashes.SHA256())
    encoded = encode_varint_field(1, 0) + encode_bytes_field(2, spki(rsa_2048.public_key()))
    key = PublicKey.from_protobuf(encoded)
    assert key.verify(b"payload", signature)
    assert not key.verify(b"payload!", signature)
    assert not key.verify(b"payload", bytes(len(signature)))
    pss = rsa_2048.sign(
        b"payload", padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.MAX_LENGTH), hashes.SHA256()
    )
    assert not key.verify(b"payload", pss)
    peer_id = PeerId.from_public_key(key)
    assert peer_id.to_bytes() == sha256_multihash(encoded)
    assert peer_id.public_key() is None


def test_rsa_below_2048_bits_is_refused() -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    signature = private.sign(b"payload", padding.PKCS1v15(), hashes.SHA256())
    assert not PublicKey(KeyType.RSA, spki(private.public_key())).verify(b"payload", signature)


@pytest.mark.parametrize("key_type", list(KeyType))
def test_verify_with_undecodable_key_is_false(key_type: KeyType) -> None:
    assert not PublicKey(key_type, b"\x30\x03\x02\x01\x01").verify(b"x", b"\x30\x06\x02\x01\x01\x02\x01\x01")
    assert not PublicKey(key_type, b"").verify(b"x", b"")


def test_verify_with_mismatched_key_type_is_false(rsa_2048: rsa.RSAPrivateKey) -> None:
    signature = rsa_2048.sign(b"payload", padding.PKCS1v15(), hashes.SHA256())
    assert not PublicKey(KeyType.ECDSA, spki(rsa_2048.public_key())).verify(b"payload", signature)


# --- private keys and key files ----------------------------------------------------------------


def test_private_key_formats() -> None:
    seed, public = key_data(SPEC_ED25519_PRIVATE)[:32], key_data(SPEC_ED25519_PRIVATE)[32:]
    for data in (seed, seed + public, seed + public + public):
        pair = KeyPair.from_private_protobuf(encode_varint_field(1, 1) + encode_bytes_field(2, data))
        assert str(pair.peer_id) == SPEC_ED25519_PEER_ID
        assert pair.to_private_protobuf() == SPEC_ED25519_PRIVATE
    other = KeyPair.generate().public_key.data
    for data in (seed + other, seed + public + other, seed + other + other, seed + public + b"\x00", b""):
        with pytest.raises(InvalidKeyError):
            KeyPair.from_private_protobuf(encode_varint_field(1, 1) + encode_bytes_field(2, data))


def test_generated_key_pair_round_trips() -> None:
    pair = KeyPair.generate()
    again = KeyPair.from_private_protobuf(pair.to_private_protobuf())
    assert again.peer_id == pair.peer_id
    assert str(pair.peer_id).startswith("12D3KooW")
    assert len(pair.to_private_protobuf()) == 4 + 64


def test_save_and_load(tmp_path: Path) -> None:
    pair = KeyPair.generate()
    path = tmp_path / "identity.key"
    pair.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_bytes() == pair.to_private_protobuf()
    assert KeyPair.load(path).peer_id == pair.peer_id
    assert KeyPair.load(str(path)).peer_id == pair.peer_id
    replacement = KeyPair.generate()
    replacement.save(path)
    assert KeyPair.load(path).peer_id == replacement.peer_id
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["identity.key"]


def test_load_or_create(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    created = KeyPair.load_or_create(path)
    assert path.exists()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert KeyPair.load_or_create(path).peer_id == created.peer_id


@pytest.mark.parametrize(
    "content",
    [b"", b"not a key", SPEC_ED25519_PRIVATE[:-1], SPEC_ED25519_PRIVATE + b"\x00", SPEC_ECDSA_PRIVATE],
)
def test_corrupt_key_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(InvalidKeyError, match=r"bad\.key"):
        KeyPair.load(path)
    with pytest.raises(InvalidKeyError) as info:
        KeyPair.load_or_create(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == content


def test_load_missing_file_raises_key_file_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=r"missing\.key: No such file or directory"):
        KeyPair.load(tmp_path / "missing.key")


# --- properties --------------------------------------------------------------------------------

key_messages = st.builds(
    lambda key_type, data, tail: encode_varint_field(1, key_type) + encode_bytes_field(2, data) + tail,
    st.integers(0, 2**32),
    st.binary(max_size=100),
    st.one_of(st.just(b""), st.binary(max_size=8)),
)


@given(st.one_of(st.binary(max_size=200), key_messages))
def test_public_key_from_protobuf_raises_only_invalid_key(buf: bytes) -> None:
    try:
        key = PublicKey.from_protobuf(buf)
    except InvalidKeyError:
        return
    assert key.to_protobuf() == buf


@given(st.one_of(st.binary(max_size=200), key_messages))
def test_private_key_from_protobuf_raises_only_invalid_key(buf: bytes) -> None:
    try:
        pair = KeyPair.from_private_protobuf(buf)
    except InvalidKeyError:
        return
    assert pair.public_key.key_type == KeyType.ED25519


multihashes = st.one_of(
    st.binary(max_size=80),
    st.builds(
        lambda body: b"\x00" + encode_uvarint(len(body)) + body,
        st.one_of(st.binary(max_size=50), key_messages),
    ),
    st.builds(lambda n, body: b"\x12" + encode_uvarint(n) + body, st.integers(0, 40), st.binary(max_size=40)),
)


@given(multihashes)
def test_peer_id_from_bytes_raises_only_invalid_key(buf: bytes) -> None:
    try:
        peer_id = PeerId.from_bytes(buf)
    except InvalidKeyError:
        return
    assert peer_id.to_bytes() == buf
    assert PeerId.from_string(str(peer_id)) == peer_id
    assert PeerId.from_string(peer_id.to_cid_string()) == peer_id


peer_id_texts = st.one_of(
    st.text(max_size=100),
    st.builds(str.__add__, st.sampled_from(["1", "Qm", "z", "12D3KooW"]), st.text(B58_ALPHABET, max_size=60)),
    st.builds(str.__add__, st.sampled_from(["b", "bafz", "baf"]), st.text(B32_ALPHABET, max_size=80)),
)


@given(peer_id_texts)
def test_peer_id_from_string_raises_only_invalid_key(text: str) -> None:
    try:
        peer_id = PeerId.from_string(text)
    except InvalidKeyError:
        return
    assert PeerId.from_bytes(peer_id.to_bytes()) == peer_id


@given(st.binary(min_size=32, max_size=32))
def test_hashed_peer_id_text_round_trip(digest: bytes) -> None:
    peer_id = PeerId(b"\x12\x20" + digest)
    assert str(peer_id).startswith("Qm")
    assert PeerId.from_string(str(peer_id)) == peer_id
    assert PeerId.from_string(peer_id.to_cid_string()) == peer_id


@given(st.binary(min_size=32, max_size=32))
def test_ed25519_peer_id_inlines_key(data: bytes) -> None:
    key = PublicKey(KeyType.ED25519, data)
    peer_id = PeerId.from_public_key(key)
    assert str(peer_id).startswith("12D3KooW")
    assert peer_id.public_key() == key
    assert PeerId.from_string(str(peer_id)) == peer_id


@given(st.sampled_from(list(KeyType)), st.binary(max_size=120), st.binary(max_size=120))
def test_verify_never_raises(key_type: KeyType, data: bytes, signature: bytes) -> None:
    assert PublicKey(key_type, data).verify(b"message", signature) is False
