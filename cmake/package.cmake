# libsvdiff.so next to libsvdiff.a, and what `cmake --install build --prefix P` writes:
#   P/lib/libsvdiff.so -> libsvdiff.so.0 -> libsvdiff.so.0.1.0, P/lib/libsvdiff.a, P/bin/svdiff,
#   P/include/svdiff.h, P/lib/pkgconfig/svdiff.pc, P/lib/cmake/svdiff/ (imported target svdiff::svdiff).
# The shared library exports the functions include/svdiff.h marks SVDIFF_API and nothing else (its
# objects are compiled with hidden visibility, CMakeLists.txt); tests/pkg_symbols.cmake checks that.
# Its dependencies (OpenBLAS, LAPACKE, cJSON, libpng, libjpeg, libzip, OpenMP, MPI) are private: a
# program links -lsvdiff alone; a static link adds svdiff.pc's Libs.private.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

add_library(svdiff_shared SHARED)
set_target_properties(svdiff_shared PROPERTIES OUTPUT_NAME svdiff EXPORT_NAME svdiff
  VERSION ${PROJECT_VERSION} SOVERSION ${PROJECT_VERSION_MAJOR})
target_link_libraries(svdiff_shared PRIVATE svdiff_objects)
target_include_directories(svdiff_shared INTERFACE $<BUILD_INTERFACE:${CMAKE_SOURCE_DIR}/include>
  $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
if(NOT SVDIFF_SANITIZE AND NOT SVDIFF_FUZZ)
  # every symbol the library uses resolves in the libraries it names (the sanitizer runtimes
  # are the executable's)
  target_link_options(svdiff_shared PRIVATE -Wl,--no-undefined)
endif()

install(TARGETS svdiff RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(TARGETS svdiff_lib ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(TARGETS svdiff_shared EXPORT svdiffTargets LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(FILES include/svdiff.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})

# svdiff.pc locates the prefix from its own folder (${pcfiledir}), so the tree works wherever
# --prefix put it. Libs.private lists the libraries a static link needs, as found here.
file(RELATIVE_PATH SVDIFF_PC_TO_PREFIX "/p/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/p")
string(REGEX REPLACE "/$" "" SVDIFF_PC_TO_PREFIX "${SVDIFF_PC_TO_PREFIX}")
set(SVDIFF_PC_LIBS_PRIVATE ${OpenMP_C_FLAGS} ${LAPACKE_LIB} ${OPENBLAS_LIB} ${CJSON_LIB}
    ${PNG_LIBRARIES} ${JPEG_LIBRARIES} ${LIBZIP_LINK_LIBRARIES})
if(SVDIFF_MPI)
  list(APPEND SVDIFF_PC_LIBS_PRIVATE ${MPI_C_LIBRARIES})
endif()
list(APPEND SVDIFF_PC_LIBS_PRIVATE -lm)
list(REMOVE_DUPLICATES SVDIFF_PC_LIBS_PRIVATE)
list(JOIN SVDIFF_PC_LIBS_PRIVATE " " SVDIFF_PC_LIBS_PRIVATE)
configure_file(${CMAKE_SOURCE_DIR}/cmake/svdiff.pc.in ${CMAKE_BINARY_DIR}/svdiff.pc @ONLY)
install(FILES ${CMAKE_BINARY_DIR}/svdiff.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

# find_package(svdiff) -> svdiff::svdiff (the shared library and its include folder)
set(SVDIFF_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/svdiff)
install(EXPORT svdiffTargets NAMESPACE svdiff:: DESTINATION ${SVDIFF_CMAKE_DIR})
# 0.x releases share the SONAME libsvdiff.so.0, so any 0.x satisfies a request for 0.y
write_basic_package_version_file(${CMAKE_BINARY_DIR}/svdiffConfigVersion.cmake
  COMPATIBILITY SameMajorVersion)
install(FILES cmake/svdiffConfig.cmake ${CMAKE_BINARY_DIR}/svdiffConfigVersion.cmake
  DESTINATION ${SVDIFF_CMAKE_DIR})
