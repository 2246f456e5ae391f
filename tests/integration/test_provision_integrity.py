
"""What a hostile repository serves is refused, naming the object; nothing is defined."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from provision_env import Env, K, assert_no_leftovers, image_bytes, need_tools, provision_env

from vmclient.provision.cache import ChunkCache
from vmclient.provision.receiver import ImageNotFound, NotEntitled
from vmclient.provision.spec import RecipeError
from vmclient.store import crypto, layout
from vmclient.store.chunkstore import ChunkStore
from vmclient.store.errors import RemoteIntegrityError
from vmclient.store.format import encode_payload

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(autouse=True)
def _prereqs() -> None:
    need_tools(vm=False)


async def refused(env: Env, tmp: Path, suffix: str) -> RemoteIntegrityError:
    with pytest.raises(RemoteIntegrityError) as info:
        await env.provisioner().install(env.recipe(tmp, suffix))
    assert_no_leftovers(env, env.name(suffix))
    return info.value


def flip(path: Path, pos: int) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= 0x01
    path.write_bytes(bytes(data))


async def test_tampered_chunk(tmp_path: Path) -> None:
    async with provision_env(tmp_path) as env:
        await env.dc.publish(f"{env.prefix}-img", image_bytes(12))
        flip(env.dc.packs(f"{env.prefix}-img")[-1], 40)  # inside the first blob
        err = await refused(env, tmp_path, "chunk")
        assert err.obj_type == "chunk" and "authentication failed" in str(err)


async def test_a_chunk_sealed_with_content_not_its_ids_never_reaches_a_disk(
        tmp_path: Path) -> None:
    """The download keeps chunks sealed, authenticated under their ids; what one holds is
    checked against its id where it is used: the assembly refuses it, leaves no disk,
    and drops it from the cache (a key holder's fault, e.g. a writer bug)."""
    async with provision_env(tmp_path) as env:
        name = f"{env.prefix}-img"
        await env.dc.publish(name, image_bytes(12))
        keys = env.dc.keys[name]
        index = await ChunkStore(env.dc.store, layout.image_store(name), keys).load_index()
        cid, ref = next((c, r) for c, r in index.items() if r.plain_length == K)
        wrong = crypto.seal(keys.enc, "chunk", cid.hex(), encode_payload(os.urandom(K), None))
        assert len(wrong) == ref.length  # stored, as the random chunk it replaces
        pack = env.dc.root / layout.pack(layout.image_store(name), ref.pack)
        data = bytearray(pack.read_bytes())
        data[ref.offset:ref.offset + ref.length] = wrong
        pack.write_bytes(bytes(data))
        err = await refused(env, tmp_path, "wrong")
        assert err.obj_type == "chunk" and err.obj_id == cid.hex(), err
        assert "content does not match its id" in str(err)
        assert cid not in ChunkCache(env.cfg.state_dir, name).ids()


async def test_truncated_pack(tmp_path: Path) -> None:
    async with provision_env(tmp_path) as env:
        await env.dc.publish(f"{env.prefix}-img", image_bytes(12))
        pack = env.dc.packs(f"{env.prefix}-img")[-1]
        pack.write_bytes(pack.read_bytes()[:100_000])
        err = await refused(env, tmp_path, "trunc")
        assert err.obj_type == "chunk" and "index says" in str(err), err


async def test_tampered_replayed_and_foreign_catalogs(tmp_path: Path) -> None:
    async with provision_env(tmp_path) as env:
        await env.dc.publish(f"{env.prefix}-img", image_bytes(8))
        catalog = env.dc.root / layout.CATALOG
        good = catalog.read_bytes()
        flip(catalog, len(good) - 5)  # in the signed body
        err = await refused(env, tmp_path, "tamp")
        assert (err.obj_type, err.path) == ("catalog", "catalog") and "bad signature" in str(err)

        catalog.write_bytes(good)
        old = await env.dc.sign_catalog()  # serial 2
        new = await env.dc.sign_catalog()  # serial 3, seen by the laptop
        await env.provisioner().receiver.catalog()  # type: ignore[union-attr]
        catalog.write_bytes(old)
        err = await refused(env, tmp_path, "replay")
        assert err.obj_type == "catalog" and "replayed" in str(err)
        catalog.write_bytes(new)

        env.dc.admin = crypto.Ed25519PrivateKey.generate()  # someone else signs
        await env.dc.sign_catalog()
        err = await refused(env, tmp_path, "signer")
        assert err.obj_type == "catalog" and "signed by unknown key" in str(err)


async def test_manifest_not_pinned_by_the_catalog(tmp_path: Path) -> None:
    async with provision_env(tmp_path) as env:
        name = f"{env.prefix}-img"
        await env.dc.publish(name, image_bytes(8, seed=1))
        await env.dc.publish(name, image_bytes(8, seed=2))
        v1 = env.dc.root / layout.image_manifest(name, 1)
        v2 = env.dc.root / layout.image_manifest(name, 2)
        v2.write_bytes(v1.read_bytes())  # the server serves version 1 as version 2
        err = await refused(env, tmp_path, "swap")
        assert err.obj_type == "manifest" and "digest" in str(err)


async def test_image_not_entitled_and_unknown(tmp_path: Path) -> None:
    async with provision_env(tmp_path) as env:
        name = f"{env.prefix}-img"
        await env.dc.publish(name, image_bytes(4))
        (env.dc.root / layout.image_key(name, env.device.wrapping_id())).unlink()
        with pytest.raises(NotEntitled, match="holds no key for image"):
            await env.provisioner().install(env.recipe(tmp_path, "noent"))
        assert_no_leftovers(env, env.name("noent"))
        other = env.recipe(tmp_path, "unknown", image='catalog = "not-published"')
        with pytest.raises(ImageNotFound, match="no image 'not-published'"):
            await env.provisioner().install(other)
        assert_no_leftovers(env, env.name("unknown"))


async def test_recipe_errors_define_nothing(tmp_path: Path) -> None:
    async with provision_env(tmp_path) as env:
        bad = env.recipe(tmp_path, "bad", kind="private")  # private VM from the catalog
        with pytest.raises(RecipeError, match=r"image\.catalog: a private VM"):
            await env.provisioner().install(bad)
        typo = env.recipe(tmp_path, "typo", extra="sise_gib = 3\n")
        with pytest.raises(RecipeError, match=r"disks\[0\].sise_gib: unknown key"):
            await env.provisioner().install(typo)
        for suffix in ("bad", "typo"):
            assert_no_leftovers(env, env.name(suffix))
