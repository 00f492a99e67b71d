/*
 * Stand-in for Raspberry Pi OS's python3-simplejpeg, which python3-picamera2 imports: a C
 * extension compiled against numpy 1 headers that calls import_array() when it is imported.
 * Built in the test against this venv's numpy 1.26, it fails exactly as the real one does when
 * numpy 2 is first on sys.path ("A module that was compiled using NumPy 1.x cannot be run in
 * NumPy 2..."; ImportError: numpy.core.multiarray failed to import).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "simplejpeg",
                                    "stand-in built against numpy 1 headers", -1, NULL, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit_simplejpeg(void) {
    import_array(); /* returns NULL with ImportError set when numpy's C API is too new */
    return PyModule_Create(&module);
}
