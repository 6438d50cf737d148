/* fuzz_adapters.c -- libFuzzer target: every shipped carrier adapter
 * (every lua/sources file) over the same body, through the real rules VM with its
 * budget and memory cap. Run from the repository root (lua/ is read). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "rules.h"

static struct rules *rules;

static const char config_text[] =
    "source \"atoship\" { verify = \"atoship\", secret = \"k\" }\n"
    "source \"shop\" { verify = \"generic\", secret = \"k\" }\n"
    "source \"aftership\" { verify = \"aftership\", secret = \"k\" }\n"
    "source \"shipengine\" { verify = \"shipengine\", jwks = \"https://127.0.0.1/jwks\" }\n"
    "source \"shiptify\" { verify = \"shiptify\", secret = \"k\" }\n"
    "source \"easypost\" { verify = \"easypost\", secret = \"k\" }\n"
    "source \"shippo\" { verify = \"shippo\", secret = \"k\" }\n"
    "source \"stripe\" { verify = \"stripe\", secret = \"k\" }\n"
    "source \"std\" { verify = \"standard\", secret = \"whsec_a2V5a2V5a2V5\" }\n";

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    char dir[] = "/tmp/waybill-fuzz-XXXXXX", path[64], err[512], lua_dir[4096];
    FILE *f;
    (void)argc;
    (void)argv;
    if (!mkdtemp(dir) || !getcwd(lua_dir, sizeof lua_dir - 8))
        abort();
    strcat(lua_dir, "/lua");
    snprintf(path, sizeof path, "%s/waybill.lua", dir);
    f = fopen(path, "w");
    if (!f || fputs(config_text, f) < 0 || fclose(f) != 0)
        abort();
    rules = rules_load(path, lua_dir, err, sizeof err);
    unlink(path);
    rmdir(dir);
    if (!rules) {
        fprintf(stderr, "fuzz_adapters: %s\n", err);
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const struct config *cfg = rules_config(rules);
    char err[512];
    for (size_t i = 0; i < cfg->nsources; i++) {
        struct rules_event ev;
        rules_adapt(rules, &cfg->sources[i], (const char *)data, size,
                    "{\"content-type\":\"application/json\",\"webhook-id\":\"msg_1\"}", &ev, err,
                    sizeof err);
        rules_event_clear(&ev);
    }
    return 0;
}
