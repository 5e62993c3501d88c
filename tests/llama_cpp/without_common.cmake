# Included by llama.cpp's project() (CMAKE_PROJECT_llama.cpp_INCLUDE): llama-cpp-python forces llama.cpp's
# common library on for its multimodal library alone, and this build has none. A normal variable hides
# that cache entry in llama.cpp's directory, so common (and the HTTP client it needs) is not compiled.
set(LLAMA_BUILD_COMMON OFF)
