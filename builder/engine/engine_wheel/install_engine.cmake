# Install-time half of CMakeLists.txt (runs inside `cmake --install`, after the
# executables and backend modules are in place): copy the shared libraries they
# need, strip everything, and write engine.json with every file's SHA-256.
set(pkg "$ENV{DESTDIR}${CMAKE_INSTALL_PREFIX}/${DX_PACKAGE}")

file(GET_RUNTIME_DEPENDENCIES
  EXECUTABLES ${DX_EXECUTABLES}
  MODULES ${DX_MODULES}
  DIRECTORIES "${DX_BUILD_DIR}/bin"
  RESOLVED_DEPENDENCIES_VAR resolved
  UNRESOLVED_DEPENDENCIES_VAR unresolved
  # only what this build made travels; the C/C++ runtime, and a GPU tier's
  # declared libraries (cuBLAS from the nvidia wheels), do not
  POST_INCLUDE_REGEXES "^${DX_BUILD_DIR}/"
  POST_EXCLUDE_REGEXES ".*")
file(MAKE_DIRECTORY "${pkg}/lib")
foreach(dep IN LISTS resolved)
  get_filename_component(name "${dep}" NAME)
  file(COPY_FILE "${dep}" "${pkg}/lib/${name}")   # follows the symlink chain: one real copy
endforeach()

file(GLOB_RECURSE elfs "${pkg}/bin/*" "${pkg}/lib/*")
if(DX_STRIP AND elfs)
  # like `dxbuild engine`: symbols the engine does not need at run time (dynamic ones stay)
  execute_process(COMMAND "${DX_STRIP}" --strip-unneeded ${elfs} COMMAND_ERROR_IS_FATAL ANY)
endif()

file(READ "${DX_ENGINE_JSON}" info)
file(GLOB_RECURSE files LIST_DIRECTORIES false RELATIVE "${pkg}" "${pkg}/*")
list(SORT files)
set(total 0)
foreach(rel IN LISTS files)
  if(rel STREQUAL "engine.json" OR rel MATCHES "__pycache__")
    continue()
  endif()
  file(SHA256 "${pkg}/${rel}" digest)
  string(JSON info SET "${info}" files "${rel}" "\"${digest}\"")
  file(SIZE "${pkg}/${rel}" size)
  math(EXPR total "${total} + ${size}")
endforeach()
string(JSON info SET "${info}" size_bytes "${total}")
file(WRITE "${pkg}/engine.json" "${info}\n")
message(STATUS "engine.json: ${total} bytes in the engine")
