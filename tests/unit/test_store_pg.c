/* test_store_pg.c -- what needs no database: the password scrubbing every
 * PostgreSQL message goes through, URL recognition, and a URL libpq cannot
 * read. The connection and the schema are tested against a real PostgreSQL
 * in tests/integration/test_pg.py. */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "store_pg.h"
#include "store_pg_int.h"

static void test_scrub(void) {
    char out[256];

    unsetenv("PGPASSWORD");
    /* the userinfo's password, raw */
    store_pg_scrub("postgresql://wb:s3cret@db/x", "auth failed for s3cret; s3cret", out,
                   sizeof out);
    CHECK_STR_EQ(out, "auth failed for ***; ***");
    /* percent-decoded too */
    store_pg_scrub("postgres://wb:a%40b%2Fc@db/x", "token \"a@b/c\" and \"a%40b%2Fc\"", out,
                   sizeof out);
    CHECK_STR_EQ(out, "token \"***\" and \"***\"");
    /* a password= query parameter, raw and decoded */
    store_pg_scrub("postgres://wb@db/x?sslmode=require&password=q%20pw&x=1", "q pw / q%20pw", out,
                   sizeof out);
    CHECK_STR_EQ(out, "*** / ***");
    /* an undecodable escape: the raw text is what libpq quotes */
    store_pg_scrub("postgres://wb:Bad%zzPw@db/x", "invalid percent-encoded token: \"Bad%zzPw\"",
                   out, sizeof out);
    CHECK_STR_EQ(out, "invalid percent-encoded token: \"***\"");
    /* PGPASSWORD */
    setenv("PGPASSWORD", "envpw-123", 1);
    store_pg_scrub("postgres://wb@db/x", "saw envpw-123", out, sizeof out);
    CHECK_STR_EQ(out, "saw ***");
    unsetenv("PGPASSWORD");
    /* libpq's lines folded into one; the trailing newline dropped */
    store_pg_scrub("postgres://db/x", "connection refused\n\tIs the server running?\n", out,
                   sizeof out);
    CHECK_STR_EQ(out, "connection refused; Is the server running?");
    /* no password: the text as it is */
    store_pg_scrub("postgres://wb@db/x", "plain", out, sizeof out);
    CHECK_STR_EQ(out, "plain");
    store_pg_scrub(NULL, NULL, out, sizeof out);
    CHECK_STR_EQ(out, "");
    /* cut short, no part of the password is left */
    {
        char small[12];
        store_pg_scrub("postgres://wb:longsecret@db/x", "x longsecret", small, sizeof small);
        CHECK(strstr(small, "longs") == NULL);
        CHECK(strlen(small) < sizeof small);
    }
}

static void test_urls(void) {
    char msg[512];

    CHECK(store_pg_is_url("postgres://db/x"));
    CHECK(store_pg_is_url("postgresql://db/x"));
    CHECK(!store_pg_is_url("sqlite:x.db"));
    CHECK(!store_pg_is_url("postgres:/db"));
    CHECK(!store_pg_is_url(NULL));
    /* refused before any connection: not a PostgreSQL URL */
    CHECK_INT_EQ(store_pg_schema("sqlite:x.db", STORE_PG_MIGRATE, 1000, 0, msg, sizeof msg), -1);
    CHECK_STR_EQ(msg, "store: 'sqlite:x.db' is not a postgres:// or postgresql:// URL");
    /* a URL libpq cannot read: its reason, without the password */
    CHECK_INT_EQ(
        store_pg_schema("postgresql://wb:Pw%zz1@db/x", STORE_PG_MIGRATE, 1000, 0, msg, sizeof msg),
        -1);
    CHECK(strstr(msg, "store: 'postgresql://wb:***@db/x': invalid percent-encoded token") == msg);
    CHECK(strstr(msg, "Pw%zz1") == NULL);
    CHECK_INT_EQ(store_pg_schema("postgresql://db/x?nosuchoption=1", STORE_PG_CHECK, 1000, 0, msg,
                                 sizeof msg),
                 -1);
    CHECK(strstr(msg, "invalid URI query parameter: \"nosuchoption\"") != NULL);
}

int main(void) {
    test_scrub();
    test_urls();
    return harness_report();
}
