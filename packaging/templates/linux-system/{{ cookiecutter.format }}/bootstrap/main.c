/*
 * Launcher for {{ cookiecutter.formal_name }}: runs the app module on the system's Python.
 *
 * It embeds libpython{{ cookiecutter.python_version|py_tag }} in isolated mode (no PYTHON* variables, no user site,
 * no current directory, no dist-packages) with exactly this sys.path, relative to the
 * executable's real location <prefix>/bin/{{ cookiecutter.app_name }}:
 *
 *   /usr/lib/python{{ cookiecutter.python_version|py_tag }}, /usr/lib/python{{ cookiecutter.python_version|py_tag }}/lib-dynload   the system stdlib
 *   <prefix>/lib/{{ cookiecutter.app_name }}/app                 the app's sources
 *   <prefix>/lib/{{ cookiecutter.app_name }}/app_packages        its requirements
 *
 * and then behaves like `python -m {{ cookiecutter.module_name }} ARGS...`: same exit codes, same
 * traceback on an uncaught exception, signals handled by Python. BRIEFCASE_MAIN_MODULE
 * overrides the module (Briefcase's test mode); BRIEFCASE_DEBUG=1 prints the set-up.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PY_TAG "{{ cookiecutter.python_version|py_tag }}"
#define APP_NAME "{{ cookiecutter.app_name }}"
#define APP_MODULE "{{ cookiecutter.module_name }}"

static int debug;

static void fail(PyConfig *config, PyStatus status) {
    PyConfig_Clear(config);
    if (PyStatus_IsExit(status)) {
        exit(status.exitcode);
    }
    Py_ExitStatusException(status);
}

static void add_path(PyConfig *config, const char *path) {
    wchar_t *wide = Py_DecodeLocale(path, NULL);
    if (wide == NULL) {
        fprintf(stderr, "%s: cannot decode path %s\n", APP_NAME, path);
        exit(70);
    }
    if (debug) {
        fprintf(stderr, "[launcher] sys.path += %s\n", path);
    }
    PyStatus status = PyWideStringList_Append(&config->module_search_paths, wide);
    PyMem_RawFree(wide);
    if (PyStatus_Exception(status)) {
        fail(config, status);
    }
}

int main(int argc, char *argv[]) {
    PyStatus status;
    PyPreConfig preconfig;
    PyConfig config;
    char path[PATH_MAX + 64];

    debug = getenv("BRIEFCASE_DEBUG") != NULL;

    /* <prefix>/bin/<app> -> <prefix>, following symlinks to the real install. */
    char *exe = realpath("/proc/self/exe", NULL);
    if (exe == NULL) {
        perror(APP_NAME ": cannot resolve /proc/self/exe");
        return 70;
    }
    char *exe_copy = strdup(exe);
    char *prefix = dirname(dirname(exe_copy));
    const char *module = getenv("BRIEFCASE_MAIN_MODULE");
    if (module == NULL || module[0] == '\0') {
        module = APP_MODULE;
    }

    PyPreConfig_InitIsolatedConfig(&preconfig);
    preconfig.utf8_mode = 1;
    preconfig.configure_locale = 1;
    status = Py_PreInitialize(&preconfig);
    if (PyStatus_Exception(status)) {
        Py_ExitStatusException(status);
    }

    PyConfig_InitIsolatedConfig(&config);
    config.buffered_stdio = 1;
    /* The bundle is read-only and already byte-compiled (see bootstrap/Makefile). */
    config.write_bytecode = 0;
    config.install_signal_handlers = 1;
    /* site would add dist-packages and the user's site: keep the app's world closed. */
    config.site_import = 0;
    config.parse_argv = 0;

    status = PyConfig_SetBytesString(&config, &config.program_name, argv[0]);
    if (PyStatus_Exception(status)) fail(&config, status);
    status = PyConfig_SetBytesString(&config, &config.executable, exe);
    if (PyStatus_Exception(status)) fail(&config, status);
    status = PyConfig_SetBytesString(&config, &config.run_module, module);
    if (PyStatus_Exception(status)) fail(&config, status);
    status = PyConfig_SetBytesArgv(&config, argc, argv);
    if (PyStatus_Exception(status)) fail(&config, status);

    config.module_search_paths_set = 1;
    add_path(&config, "/usr/lib/python" PY_TAG);
    add_path(&config, "/usr/lib/python" PY_TAG "/lib-dynload");
    snprintf(path, sizeof path, "%s/lib/%s/app", prefix, APP_NAME);
    add_path(&config, path);
    snprintf(path, sizeof path, "%s/lib/%s/app_packages", prefix, APP_NAME);
    add_path(&config, path);

    if (debug) {
        fprintf(stderr, "[launcher] executable %s, running module %s\n", exe, module);
    }
    free(exe_copy);
    free(exe);

    status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status)) {
        fail(&config, status);
    }
    /* Runs the module as __main__; returns its exit status like `python -m`. */
    return Py_RunMain();
}
