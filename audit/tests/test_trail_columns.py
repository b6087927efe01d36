"""The trail's columns, listed once (audit.chain.COLUMNS): the chain MACs those, and the
writers store those. A column added to the trail but not to the list, or to one writer and
not the other, would store rows whose MAC no longer matches: these tests fail first."""

import re

from audit import chain, services
from audit.context import AuditContext
from audit.models import AuditEvent


def test_the_chain_covers_every_column_of_the_trail_but_the_mac():
    stored = {field.column for field in AuditEvent._meta.concrete_fields}
    assert set(chain.COLUMNS) == stored - {"mac"}
    assert len(chain.COLUMNS) == len(set(chain.COLUMNS))


def test_the_context_columns_are_the_chains_own():
    assert services._COMMON == chain.CONTEXT_COLUMNS
    assert set(chain.CONTEXT_COLUMNS) <= set(chain.COLUMNS)
    # What a request's context fills in is exactly those columns, with or without a context.
    ctx = AuditContext(ip="192.0.2.1", user_agent="pytest", request_id="r1", path="/x/", purpose="test")
    assert set(services._context_columns(ctx)) == set(chain.CONTEXT_COLUMNS)
    assert set(services._context_columns(None)) <= set(chain.CONTEXT_COLUMNS)


def test_the_postgresql_insert_of_reads_stores_every_chained_column():
    inserted = re.match(r'INSERT INTO "audit_auditevent" \(([^)]*)\)', services._INSERT_READS).group(1)
    names = [name.strip() for name in inserted.split(",")]
    assert set(names) == {*chain.COLUMNS, "mac"}
    assert len(names) == len(chain.COLUMNS) + 1
    # One value per column, the address cast where the address goes.
    values = re.search(r" SELECT (.*) FROM unnest", services._INSERT_READS).group(1).split(", ")
    assert len(values) == len(names)
    assert values[names.index("ip")] == "%s::inet"
